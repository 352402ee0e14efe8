//! `azure-sim serve …` / `azure-sim fake-listener …`: see [`azure_sim::cli`].

fn main() {
    azure_sim::cli::main()
}
