// meshrt-serve serving a C++ servable from a shared library
// (examples/plugin/scale_servable.cc): one model whose config.json names the
// library in its folder, one whose config names a library of another build ABI,
// replaced with --servable-library; and the job that is not given the flag
// refuses to start, naming both ABIs.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "server_job.h"

namespace meshrt::serving {
namespace {

using json = nlohmann::json;

// A repository of two 2-rank models (2 stages, each scaling by the factor).
std::string write_repository() {
  fs::path root = fs::temp_directory_path() / ("meshrt-plugin-e2e-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto model = [&](const std::string& name, const std::string& library, double factor) {
    fs::create_directories(root / name);
    json config = {{"name", name},
                   {"rank_size", 2},
                   {"stage_size", 2},
                   {"servable_library", library},
                   {"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                   {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                   {"parameters", {{"factor", factor}}}};
    std::ofstream(root / name / "config.json") << config.dump(2);
  };
  model("scaled", "libscale_servable.so", 2.5);
  fs::copy_file(SCALE_SERVABLE, root / "scaled" / "libscale_servable.so");
  model("flagged", OTHER_ABI_SERVABLE, -3.0);
  return root.string();
}

// y of model for x = [[1, 2, 3, 4], [-1, 0, 0.5, 8]].
std::vector<double> infer(const ServerJob& job, const std::string& model) {
  json body = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {2, 4}},
                            {"data", {1, 2, 3, 4, -1, 0, 0.5, 8}}}}}};
  HttpResponse r = job.client().request("POST", "/v2/models/" + model + "/infer", body.dump(),
                                        {{"Content-Type", "application/json"}});
  EXPECT_EQ(r.status, 200) << r.body;
  if (r.status != 200) return {};
  json out = json::parse(r.body);
  EXPECT_EQ(out["outputs"][0]["shape"], json({2, 4}));
  return out["outputs"][0]["data"].get<std::vector<double>>();
}

TEST(ServablePlugin, MeshrtServeServesTheLibrariesOfConfigAndFlag) {
  std::string repository = write_repository();
  {
    ServerJob job(2, repository, {"--servable-library", std::string("flagged=") + SCALE_SERVABLE});
    ASSERT_TRUE(job.wait_ready()) << job.log();
    const std::vector<double> x = {1, 2, 3, 4, -1, 0, 0.5, 8};
    for (const auto& [model, factor] : {std::pair<std::string, double>{"scaled", 2.5}, {"flagged", -3.0}}) {
      std::vector<double> y = infer(job, model);
      ASSERT_EQ(y.size(), x.size()) << model;
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i] * factor * factor, 1e-4) << model << " [" << i << "]";
    }
    HttpResponse meta = job.client().request("GET", "/v2/models/scaled");
    ASSERT_EQ(meta.status, 200) << meta.body;
    EXPECT_EQ(json::parse(meta.body)["outputs"][0]["name"], "y");
    job.signal_rank0(SIGTERM);
    ASSERT_TRUE(job.exited(std::chrono::seconds(60))) << job.log();
    EXPECT_EQ(job.exit_code(), 0) << job.log();
  }
  {
    // Without the flag, "flagged" names a library of another build: the job refuses to start.
    ServerJob job(2, repository);
    ASSERT_TRUE(job.exited(std::chrono::seconds(120))) << job.log();
    EXPECT_EQ(job.exit_code(), 2) << job.log();
    EXPECT_TRUE(job.log_shows(std::string("servable library ") + OTHER_ABI_SERVABLE)) << job.log();
    EXPECT_TRUE(job.log_shows("was built against meshrt 0.0.1")) << job.log();
  }
  {
    ServerJob job(2, repository, {"--servable-library", "flagged"});
    ASSERT_TRUE(job.exited(std::chrono::seconds(120))) << job.log();
    EXPECT_NE(job.exit_code(), 0);
    EXPECT_TRUE(job.log_shows("--servable-library expects <model>=<path>, got 'flagged'")) << job.log();
  }
  fs::remove_all(repository);
}

}  // namespace
}  // namespace meshrt::serving
