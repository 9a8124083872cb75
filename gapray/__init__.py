"""gapray: self-improvement of unified multimodal models from their own understanding.

The model generates images, its own understanding branch judges them, and the judgements
become preference pairs (online DPO) or filtered data (SFT). See README.md and
shared/DESIGN.md for the dataflow.
"""

__version__ = "0.1.0"
