fn main() {
    println!(
        "i2i-stats {} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("COMMIT_ID")
    );
}
