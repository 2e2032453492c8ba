"""The supervisor: a registry of repositories, one mount worker per repository, and the unix
socket the CLI talks to."""
