"""Evaluation metrics: LUNA16 FROC/CPM and segmentation Dice."""
