"""Tool calling: the tools a chat request offers, how they reach the prompt, the grammar that keeps
a call valid, and the parser that turns the model's text back into OpenAI's `tool_calls`."""
