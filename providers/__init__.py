"""AI providers behind one protocol: demo (offline), OpenAI and Anthropic."""
