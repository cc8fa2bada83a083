"""Build and maintenance commands (``python -m birdsdao.tools.<name>``); the server never imports them."""
