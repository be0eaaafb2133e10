"""temporal-shield codec server (see issue: the codec server)."""
