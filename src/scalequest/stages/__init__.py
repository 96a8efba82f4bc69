"""One module per paper stage."""
