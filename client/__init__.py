"""The partner side: the Flower ClientApp and the typed training / evaluation calls behind it."""
