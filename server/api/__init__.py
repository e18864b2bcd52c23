"""HTTP API: one router per resource, the OpenAI-style protocol models, and error translation."""
