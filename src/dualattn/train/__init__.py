"""dualattn.train"""
