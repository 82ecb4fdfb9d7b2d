"""python -m nfaas: the same as the nfaas command."""

from nfaas.cli.main import app

if __name__ == "__main__":
    app()
