"""`mesh-llm bundle` and `mesh-llm deploy`: an offline install in one file, and its delivery."""
