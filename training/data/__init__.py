"""Training data: frame sources (rosbags, videos, image folders), frame-pair datasets and benchmarks."""
