"""The notebooks' glue: ipywidgets browsers over the data and results modules."""
