"""The 5G EVE monitoring platform (seed 001) as nfaas functions."""
