//! The simulator as a program built with agent-bootstrap's tests (`cargo test` builds examples):
//! the fake agent's `Agent.Listener`, and `serve` for the demo and the benchmark. Not shipped.

fn main() {
    azure_sim::cli::main();
}
