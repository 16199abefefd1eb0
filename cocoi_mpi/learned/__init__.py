"""Learned codes: codec nets, the learned Scheme adapter, codec training and accuracy with
outputs lost.
"""
