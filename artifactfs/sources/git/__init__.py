"""The git source: refs, trees and blobs from any git server, through dulwich."""

from .source import GitSource

__all__ = ["GitSource"]
