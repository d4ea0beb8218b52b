//! `twinblk-witness`: not implemented yet; it says so and exits non-zero rather than pretend.

fn main() {
    eprintln!(
        "twinblk-witness {}: the witness is not built yet (protocol version {}); see the issue \
         \"Witness, failover in about a second, fencing, and online resync\"",
        env!("CARGO_PKG_VERSION"),
        twinblk_witness::proto::VERSION
    );
    std::process::exit(2);
}
