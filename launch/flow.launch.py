"""Launch the mdflow_ros optical-flow node.

    ros2 launch mdflow_ros flow.launch.py image_topic:=/camera/image_raw [params_file:=...]
        [backend:=openvino] [precision:=bf16] [namespace:=robot1] [fastdds_profile:=...]

The arguments and what they turn into live in mdflow_ros/ros/launch_args.py (tested without
ROS launch). The node process gets the Fast DDS large-image profile: without it, images
over ~512 kB are silently dropped; set the same profile in the camera driver's process.
"""
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mdflow_ros.ros.launch_args import EXECUTABLE, LAUNCH_ARGUMENTS, NODE_NAME, flow_node_launch


def _flow_node(context):
    values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in LAUNCH_ARGUMENTS}
    spec = flow_node_launch(get_package_share_directory("mdflow_ros"), **values)
    parameters = [*spec.parameter_files, *([spec.parameter_overrides] if spec.parameter_overrides else [])]
    return [Node(package="mdflow_ros", executable=EXECUTABLE, name=NODE_NAME, namespace=spec.namespace,
                 parameters=parameters, remappings=spec.remappings, additional_env=spec.environment,
                 output="screen", emulate_tty=True)]


def generate_launch_description() -> LaunchDescription:
    """Declared arguments, then the flow node built from their values."""
    arguments = [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, default, text in LAUNCH_ARGUMENTS]
    return LaunchDescription([*arguments, OpaqueFunction(function=_flow_node)])
