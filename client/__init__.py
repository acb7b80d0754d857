"""The partner side: the Flower ClientApp and the typed training / evaluation calls behind it.

No imports here: this file runs before the partner's code check (client.pinning)."""
