//! The `weft-cni` CNI plugin; everything lives in `weft::cni`.

fn main() -> std::process::ExitCode {
    weft::cni::main()
}
