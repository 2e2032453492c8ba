"""Real servers, real repositories and real mounts for the tests: nothing here is a mock."""
