"""zf-pipeline: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks".

The library has no Dagster imports: every stage is a plain function usable from a notebook.
The Dagster layer lives in the top-level ``assets`` package.
"""

__version__ = "0.1.0"
