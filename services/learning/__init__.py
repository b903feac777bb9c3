"""What runs in the learner: the feedback worker (applies events, ends reward waits, feeds the
bandit), the background trainer (ranker and XR-Linear retraining) and the gates every new model
passes. Inside the API process by default (`embedded_worker`), or as `ltrr worker`."""
