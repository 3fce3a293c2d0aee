//! Drift check for the committed generated code.
//!
//! The Rust code for `flopmeter.v1` is generated from `proto/flopmeter/v1/*.proto` and committed
//! in `proto/src/gen/`, so neither a node nor CI needs `protoc` or a code generator to build.
//! This test regenerates it with protox (a pure-Rust protobuf compiler) and
//! tonic-prost-build, and fails if the result differs from what is committed. To update the
//! committed code after editing a .proto, run:
//!
//! ```sh
//! FLOPMETER_REGENERATE_PROTO=1 cargo test -p flopmeter-proto --test bootstrap
//! ```

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos: Vec<PathBuf> = std::fs::read_dir(root.join("flopmeter/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let fds = protox::compile(&protos, [root]).expect("the .proto files compile");

    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");

    let generated = out.path().join("flopmeter.v1.rs");
    let fresh = std::fs::read_to_string(&generated).unwrap();
    let committed_path = root.join("src/gen/flopmeter.v1.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh != committed {
        if std::env::var_os("FLOPMETER_REGENERATE_PROTO").is_some() {
            std::fs::create_dir_all(committed_path.parent().unwrap()).unwrap();
            std::fs::write(&committed_path, fresh).unwrap();
            eprintln!("regenerated {}", committed_path.display());
        } else {
            panic!(
                "proto/src/gen/flopmeter.v1.rs is out of date with the .proto files; run \
                 FLOPMETER_REGENERATE_PROTO=1 cargo test -p flopmeter-proto --test bootstrap \
                 and commit the result"
            );
        }
    }
}
