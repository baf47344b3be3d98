"""The request path: the decorator and the ASGI middleware that capture inferences."""
