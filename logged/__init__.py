"""What the service logs and how it is rewarded, shared by serving, learning and replay: the
record schema (`records`) and the one reward definition (`rewards`)."""
