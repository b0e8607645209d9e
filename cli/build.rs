//! With the `prebuilt` feature the binary links the official `libduckdb.so` from
//! `DUCKDB_LIB_DIR`; an rpath to that directory lets it run without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_PREBUILT").is_some() {
        if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
        }
    }
}
