"""venice"""
