"""What the suites run on: exactly enumerated real-model games and the models they use."""
