"""The `alerts` component: the active alerts state (worker.py) and the webhook sender (webhook.py)."""
