"""Sample data the project makes itself, for the README's demo and for benchmarks."""
