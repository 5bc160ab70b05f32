"""packer: turn a Hugging Face checkpoint into one executable file that runs offline."""

__version__ = "0.2.0"
