"""What runs in the API process (`ltrr serve`): the HTTP app and its routers, the search pipeline,
the runtime that loads and hot-swaps models, and the feedback ingest behind `POST /feedback`."""
