"""Jobs the CLI runs to completion: building indexes, the cold start, simulated traffic and the
`ltrr replay` front end over the replay library."""
