// cluster/cluster_spec.h: TF_CONFIG as TensorFlow writes it (the seed's
// cluster of a chief, workers and parameter servers), round trips, and every
// malformed part refused with a message that names it.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "cluster/cluster_spec.h"
#include "cluster/wire.h"
#include "device/error.h"

namespace meshrt::cluster {
namespace {

const char* kConfig = R"({"cluster": {"chief": ["localhost:2222"],
                                      "worker": ["localhost:2223", "localhost:2224", "localhost:2225"],
                                      "ps": ["localhost:2226", "localhost:2227"]},
                          "task": {"type": "worker", "index": 1}})";

void expect_refused(const std::string& text, const std::string& fragment) {
  try {
    TaskConfig::parse(text);
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(e.message().find(fragment), std::string::npos) << "message: " << e.message() << "\nwanted: " << fragment;
  }
}

TEST(ClusterSpec, ParsesTensorFlowsTfConfig) {
  TaskConfig c = TaskConfig::parse(kConfig);
  EXPECT_EQ(c.task, (TaskId{TaskType::kWorker, 1}));
  EXPECT_EQ(c.task.to_string(), "/job:worker/task:1");
  EXPECT_EQ(c.cluster.num_tasks(TaskType::kWorker), 3);
  EXPECT_EQ(c.cluster.num_tasks(TaskType::kPs), 2);
  EXPECT_EQ(c.cluster.num_tasks(TaskType::kEvaluator), 0);
  EXPECT_EQ(c.cluster.address({TaskType::kPs, 1}), "localhost:2227");
  EXPECT_EQ(c.cluster.address({TaskType::kChief, 0}), "localhost:2222");
  EXPECT_NO_THROW(c.cluster.require_parameter_server_cluster());
  // Round trip.
  TaskConfig again = TaskConfig::parse(c.to_json());
  EXPECT_EQ(again.task, c.task);
  EXPECT_EQ(again.cluster.to_json(), c.cluster.to_json());
  EXPECT_EQ(split_address("[::1]:2222"), (std::pair<std::string, int>{"[::1]", 2222}));
}

TEST(ClusterSpec, SidecarEvaluatorNeedNotBeListed) {
  TaskConfig c = TaskConfig::parse(R"({"cluster": {"worker": ["h:1"], "ps": ["h:2"]},
                                      "task": {"type": "evaluator", "index": 0}})");
  EXPECT_EQ(c.task.type, TaskType::kEvaluator);
  expect_refused(R"({"cluster": {"worker": ["h:1"], "ps": ["h:2"], "evaluator": ["h:3"]},
                    "task": {"type": "evaluator", "index": 1}})",
                 "/job:evaluator/task:1 is not in the cluster");
}

TEST(ClusterSpec, MalformedPartsAreRefusedByName) {
  expect_refused("not json", "TF_CONFIG is not JSON");
  expect_refused("[]", "must be a JSON object");
  expect_refused(R"({"task": {"type": "worker"}})", "no \"cluster\"");
  expect_refused(R"({"cluster": {"worker": ["h:1"]}})", "no \"task\"");
  expect_refused(R"({"cluster": {"trainer": ["h:1"]}, "task": {"type": "worker"}})", "unknown task type \"trainer\"");
  expect_refused(R"({"cluster": {"worker": "h:1"}, "task": {"type": "worker"}})", "must be a list");
  expect_refused(R"({"cluster": {"worker": [7]}, "task": {"type": "worker"}})", "not a \"host:port\" string");
  expect_refused(R"({"cluster": {"worker": ["h"]}, "task": {"type": "worker"}})", "is not \"host:port\"");
  expect_refused(R"({"cluster": {"worker": ["h:0"]}, "task": {"type": "worker"}})", "is not 1..65535");
  expect_refused(R"({"cluster": {"worker": ["h:70000"]}, "task": {"type": "worker"}})", "is not 1..65535");
  expect_refused(R"({"cluster": {"worker": ["h:1x"]}, "task": {"type": "worker"}})", "is not 1..65535");
  expect_refused(R"({"cluster": {"worker": ["::1:5"]}, "task": {"type": "worker"}})", "in brackets");
  expect_refused(R"({"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker"}})", "given twice");
  expect_refused(R"({"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief"}})", "at most one chief");
  expect_refused(R"({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}})",
                 "/job:worker/task:1 is not in the cluster (1 worker task(s))");
  expect_refused(R"({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": -1}})", "integer in 0..1000000");
  expect_refused(R"({"cluster": {"worker": ["h:1"]}, "task": {"index": 0}})", "needs a \"type\"");
  expect_refused(R"({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker"}, "rpc_layer": "mpi"})",
                 "must be \"grpc\"");
  TaskConfig no_ps = TaskConfig::parse(R"({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker"}})");
  EXPECT_THROW(no_ps.cluster.require_parameter_server_cluster(), Error);
}

TEST(ClusterSpec, FromTheEnvironmentOrAFile) {
  ::unsetenv("TF_CONFIG");
  ::unsetenv("MESHRT_TF_CONFIG_FILE");
  EXPECT_FALSE(TaskConfig::from_environment().has_value());
  ::setenv("TF_CONFIG", kConfig, 1);
  EXPECT_EQ(TaskConfig::from_environment()->task.index, 1);
  ::setenv("TF_CONFIG", "{", 1);
  try {
    TaskConfig::from_environment();
    ADD_FAILURE() << "bad TF_CONFIG accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("the environment variable TF_CONFIG"), std::string::npos) << e.message();
  }
  ::unsetenv("TF_CONFIG");
  std::string path = ::testing::TempDir() + "/tf_config.json";
  std::ofstream(path) << kConfig;
  ::setenv("MESHRT_TF_CONFIG_FILE", path.c_str(), 1);
  EXPECT_EQ(TaskConfig::from_environment()->cluster.num_tasks(TaskType::kWorker), 3);
  ::setenv("MESHRT_TF_CONFIG_FILE", "/nonexistent/tf_config.json", 1);
  EXPECT_THROW(TaskConfig::from_environment(), Error);
  ::unsetenv("MESHRT_TF_CONFIG_FILE");
  std::remove(path.c_str());
}

// Tensors on cluster messages: a round trip, and what a malformed one gets
// (an unknown dtype, a negative extent, bytes that do not fill the shape),
// each refused naming the message part.
TEST(ClusterWire, TensorsRoundTripAndMalformedOnesAreRefused) {
  TensorProto proto;
  put_tensor(&proto, HostTensor::from_vector<float>({1, 2, 3, 4, 5, 6}, Shape{2, 3}));
  HostTensor back = get_tensor(proto, "the value");
  EXPECT_EQ(back.shape(), (Shape{2, 3}));
  EXPECT_EQ(back.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  auto refused = [](const TensorProto& p, const std::string& fragment) {
    try {
      get_tensor(p, "the value");
      ADD_FAILURE() << "accepted: " << p.DebugString();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(e.message().find("the value"), std::string::npos) << e.message();
      EXPECT_NE(e.message().find(fragment), std::string::npos) << e.message();
    }
  };
  TensorProto bad_dtype = proto;
  bad_dtype.set_dtype("f128");
  refused(bad_dtype, "unknown dtype \"f128\"");
  TensorProto short_data = proto;
  short_data.set_data(proto.data().substr(0, 8));
  refused(short_data, "8 bytes do not fill f32 [2, 3] (24 bytes)");
  TensorProto negative = proto;
  negative.set_shape(0, -2);
  refused(negative, "extent -2 out of range");
}

}  // namespace
}  // namespace meshrt::cluster
