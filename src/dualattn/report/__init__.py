"""dualattn.report"""
