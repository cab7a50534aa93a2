"""The request shapes the load tools know, kept apart from locustfile.py so importing them does not load locust
(which monkey-patches the process with gevent)."""

USER_CLASSES = ("SingleText", "Batch100", "OpenAIBase64", "Jsonl1000", "Binary")
TEXTS_PER_REQUEST = {"SingleText": 1, "Batch100": 100, "OpenAIBase64": 8, "Jsonl1000": 1000, "Binary": 100}
