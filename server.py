"""Entry point: ``gunicorn -c gunicorn.conf.py server:app`` or ``python server.py`` for development."""
import os

from birdsdao import create_app

app = create_app()

if __name__ == "__main__":
    app.run(host=os.environ.get("BIRDSDAO_HOST", "127.0.0.1"), port=int(os.environ.get("BIRDSDAO_PORT", "5000")),
            threaded=True)
