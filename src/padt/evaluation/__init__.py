"""Evaluation for PaDT: REC/RES accuracy and IoU, COCO box mAP for OVD, RIC caption and grounding metrics."""
