//! A valid WebAssembly component that is not a Flint job (a plain WASI command).

fn main() {
    println!("hello from a component that is not a Flint job");
}
