"""threadlab's research engine: store, loop, proposers, executors and guards."""
