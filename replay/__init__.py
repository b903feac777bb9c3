"""Off-policy evaluation of logged bandit traffic: estimators (IPS, SNIPS, DM, DR, replay), log
readers, reward models and the HTML/Markdown report. A library: it imports `bandit` and the
record schema in `logged`, nothing of `services` (`ltrr replay` is services/offline/replay_cli.py)."""
