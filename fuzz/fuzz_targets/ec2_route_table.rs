#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzzing::ec2_route_table(data));
