pub mod etcd;
pub mod weft;
