//! Assembles the demo guest (demo/guest.rs) into $OUT_DIR/demo.bin.

#[path = "demo/guest.rs"]
mod guest;

fn main() {
    println!("cargo:rerun-if-changed=demo/guest.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let rom = match guest::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo guest failed to assemble: {e}");
            std::process::exit(1);
        }
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = std::fs::write(out.join("demo.bin"), rom) {
        eprintln!("cannot write demo.bin: {e}");
        std::process::exit(1);
    }
}
