// mmfree._mmfree: the Python bindings' compiled part (pybind11). It binds the library as it is:
// a Model (with its tokenizer), State, the forward passes returning NumPy arrays that own the
// library's buffers (no copy), and a Generation that runs generate_from on its own thread and
// hands tokens over a queue, so that Python can stream them, stop early, and be interrupted with
// Ctrl-C while the GIL is free. python/mmfree/__init__.py builds the llama-cpp-python-style API
// (create_completion, streaming chunks) on top.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "mmfree/grammar_filter.hpp"
#include "mmfree/json_schema_grammar.hpp"
#include "mmfree/mmfree.hpp"
#include "mmfree/serve/stop_text.hpp"
#include "mmfree/state_file.hpp"

namespace py = pybind11;

namespace {

// A vector handed to NumPy without a copy: the array owns it through a capsule.
py::array_t<float> to_numpy(std::vector<float>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<float>(std::move(v));
  py::capsule free_it(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, owned->data(), free_it);
}

struct PyModel;

// A sequence's recurrent state. `model` is set for states made by a model (and needed to save
// one in the checked file format); an unpickled state has none until used with one.
struct PyState {
  mmfree::State s;
  std::shared_ptr<const PyModel> model;
};

struct PyModel : std::enable_shared_from_this<PyModel> {
  std::string path;
  mmfree::Model m;
  mmfree::Tokenizer tok;
  PyModel(std::string p, mmfree::Model model, mmfree::Tokenizer t) : path(std::move(p)), m(std::move(model)), tok(std::move(t)) {}

  static std::shared_ptr<PyModel> load(const std::string& path, std::optional<int> threads, std::optional<std::string> kernels,
                                       std::optional<std::string> format, std::shared_ptr<PyModel> share_threads_with,
                                       std::optional<bool> interleaved, std::optional<bool> wide) {
    if (!std::filesystem::exists(path)) {
      PyErr_SetString(PyExc_FileNotFoundError, (path + ": no such file or directory").c_str());
      throw py::error_already_set();
    }
    mmfree::ModelOptions o;
    o.threads = mmfree::available_cores();
    if (threads) o.threads = *threads;
    if (kernels) o.kernels = *kernels;
    if (format) o.format = mmfree::parse_format(*format, "format");
    if (share_threads_with) o.pool = share_threads_with->m.options().pool;
    o.interleaved = interleaved;
    o.wide = wide;
    py::gil_scoped_release unlocked;
    mmfree::Model m = mmfree::load_model(path, o);
    mmfree::Tokenizer t = mmfree::load_tokenizer(path);
    return std::make_shared<PyModel>(path, std::move(m), std::move(t));
  }

  mmfree::State& state_of(PyState& st) const {
    if (st.s.h.size() != size_t(m.config().num_hidden_layers) ||
        (!st.s.h.empty() && st.s.h[0].size() != size_t(m.config().input_dim())))
      throw mmfree::Error("State: does not belong to this model (" + path + ")");
    return st.s;
  }
};

// One generation on its own thread: tokens and text come through a queue.
class Generation {
 public:
  struct Item {
    int32_t id;
    std::string text;   // released now (stop strings held back until they cannot begin one)
    std::string piece;  // this token's own text (the decoder's)
    std::optional<mmfree::TokenLogprob> logprob;
  };

  Generation(std::shared_ptr<const PyModel> model, std::vector<int32_t> prompt, mmfree::GenerateOptions g,
             std::vector<std::string> stops, std::shared_ptr<PyState> state, std::shared_ptr<const PyModel> draft, int logprobs)
      : model_(std::move(model)), draft_(std::move(draft)), state_(std::move(state)), stop_(std::move(stops)), logprobs_(logprobs) {
    model_->m.check_ids(prompt);
    thread_ = std::thread([this, prompt = std::move(prompt), g = std::move(g)] { run(prompt, g); });
  }
  ~Generation() {
    cancel();
    if (thread_.joinable()) {
      py::gil_scoped_release unlocked;
      thread_.join();
    }
  }

  // The next token and its text (text may be empty: a UTF-8 character or a possible stop string
  // still incomplete), or None at the end. Waits with the GIL released, and lets Python's signal
  // handlers run (Ctrl-C raises KeyboardInterrupt here; the generation is then cancelled).
  std::optional<Item> next() {
    streaming_ = true;
    for (;;) {
      {
        py::gil_scoped_release unlocked;
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait_for(l, std::chrono::milliseconds(50), [&] { return !items_.empty() || done_; });
        if (!items_.empty()) {
          Item it = std::move(items_.front());
          items_.pop_front();
          return it;
        }
        if (done_) break;
      }
      if (PyErr_CheckSignals() != 0) {
        cancel();
        throw py::error_already_set();
      }
    }
    if (thread_.joinable()) {
      py::gil_scoped_release unlocked;
      thread_.join();
    }
    if (!error_.empty()) throw mmfree::Error(error_);
    return std::nullopt;
  }
  void cancel() { cancelled_ = true; }

  // Every item, once the generation has ended: no wake-up per token (they would take a core from
  // the model's threads), only every 50 ms for Python's signal handlers.
  std::vector<Item> all() {
    streaming_ = false;
    for (;;) {
      {
        py::gil_scoped_release unlocked;
        std::unique_lock<std::mutex> l(mu_);
        if (cv_.wait_for(l, std::chrono::milliseconds(50), [&] { return done_; })) break;
      }
      if (PyErr_CheckSignals() != 0) {
        cancel();
        throw py::error_already_set();
      }
    }
    std::vector<Item> out(std::make_move_iterator(items_.begin()), std::make_move_iterator(items_.end()));
    items_.clear();
    if (thread_.joinable()) {
      py::gil_scoped_release unlocked;
      thread_.join();
    }
    if (!error_.empty()) throw mmfree::Error(error_);
    return out;
  }

  py::dict stats() const {
    std::lock_guard<std::mutex> l(mu_);
    py::dict d;
    d["prompt_tokens"] = st_.prompt_tokens;
    d["completion_tokens"] = st_.generated_tokens;
    d["finish_reason"] = finish_;
    d["prefill_seconds"] = st_.prefill_seconds;
    d["decode_seconds"] = st_.decode_seconds;
    d["time_to_first_token"] = st_.time_to_first_token;
    d["passes"] = st_.passes;
    d["drafted"] = st_.drafted;
    d["accepted"] = st_.accepted;
    return d;
  }

 private:
  void run(const std::vector<int32_t>& prompt, const mmfree::GenerateOptions& g) {
    mmfree::GenerateStats st;
    std::string finish = "length";
    try {
      mmfree::IncrementalDecoder dec(model_->tok);
      for (int32_t id : prompt) dec.push(id);  // the text continues the prompt's spacing
      mmfree::Sampler sampler(g.sampling);
      std::vector<int32_t> history;
      std::vector<float> logits;
      mmfree::State local = model_->m.new_state();
      mmfree::State& s = state_ ? state_->s : local;
      int64_t n = 0;
      std::optional<mmfree::TokenLogprob> lp;
      mmfree::GenerateOptions go = g;
      if (logprobs_ >= 0) go.on_logits = [&](int32_t id, const std::vector<float>& l) { lp = mmfree::token_logprob(l, id, logprobs_); };
      st = mmfree::generate_from(model_->m, s, logits, prompt, go, sampler, history, [&](int32_t id) {
        std::string piece = dec.push(id);
        std::string text = stop_.push(piece);
        ++n;
        push({id, std::move(text), std::move(piece), std::move(lp)});
        lp.reset();
        if (stop_.stopped()) finish = "stop";
        return !stop_.stopped() && !cancelled_;
      }, /*consume_generated=*/state_ != nullptr);
      if (cancelled_) finish = "cancelled";
      else if (!stop_.stopped()) {
        if (n < g.max_new_tokens) finish = "stop";  // EOS
        std::string tail = stop_.push(dec.finish());
        tail += stop_.finish();
        if (!tail.empty()) push({-1, std::move(tail), "", std::nullopt});
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> l(mu_);
      error_ = e.what();
    }
    std::lock_guard<std::mutex> l(mu_);
    st_ = st;
    finish_ = finish;
    done_ = true;
    cv_.notify_all();
  }
  void push(Item it) {
    std::lock_guard<std::mutex> l(mu_);
    items_.push_back(std::move(it));
    if (streaming_) cv_.notify_all();
  }

  std::shared_ptr<const PyModel> model_, draft_;
  std::shared_ptr<PyState> state_;
  mmfree::api::StopText stop_;
  int logprobs_ = -1;  // with >= 0: each token's log-probability and this many alternatives
  std::atomic<bool> streaming_{true};  // false: all() collects at the end; pushes wake nobody
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool done_ = false;
  std::atomic<bool> cancelled_{false};
  std::string error_, finish_ = "length";
  mmfree::GenerateStats st_;
};

std::vector<int32_t> ids_of(const py::object& o) { return o.cast<std::vector<int32_t>>(); }

// (id, released text, the token's own text, (logprob, [(id, logprob), ...]) or None)
py::tuple to_python(const Generation::Item& it) {
  py::object lp = py::none();
  if (it.logprob) {
    py::list top;
    for (const auto& [id, v] : it.logprob->top) top.append(py::make_tuple(id, v));
    lp = py::make_tuple(it.logprob->logprob, top);
  }
  return py::make_tuple(it.id, py::bytes(it.text), py::bytes(it.piece), lp);
}

}  // namespace

PYBIND11_MODULE(_mmfree, mod) {
  mod.doc() = "mmfree: MatMul-free language models on the CPU (the compiled part; use the mmfree package)";
  // The library's errors name the input and the problem: ValueError with that message.
  py::register_exception<mmfree::Error>(mod, "Error", PyExc_ValueError);
  mod.attr("__version__") = MMFREE_VERSION_STRING;

  py::class_<PyState, std::shared_ptr<PyState>>(mod, "State")
      .def_property_readonly("position", [](const PyState& s) { return s.s.position; },
                             "tokens this state has read")
      .def("copy", [](const PyState& s) { return std::make_shared<PyState>(s); }, "an independent copy")
      .def("to_bytes", [](const PyState& s) {
             if (!s.model) throw mmfree::Error("State.to_bytes: this state has no model (unpickled): use Model.state_to_bytes");
             return py::bytes(mmfree::state_bytes(s.model->m, s.s));
           }, "the state in mmfree's checked state-file format (docs/state-files.md)")
      .def("save", [](const PyState& s, const std::string& path) {
             if (!s.model) throw mmfree::Error("State.save: this state has no model (unpickled): use Model.save_state");
             py::gil_scoped_release unlocked;
             mmfree::save_state(s.model->m, s.s, path);
           }, py::arg("path"), "writes the state file atomically")
      .def(py::pickle(
          [](const PyState& s) {  // position, then each layer's vector as float32 bytes
            py::list layers;
            for (const auto& h : s.s.h) layers.append(py::bytes(reinterpret_cast<const char*>(h.data()), h.size() * sizeof(float)));
            return py::make_tuple(s.s.position, layers);
          },
          [](py::tuple t) {
            if (t.size() != 2) throw mmfree::Error("State: bad pickle");
            auto st = std::make_shared<PyState>();
            st->s.position = t[0].cast<int64_t>();
            for (auto layer : t[1].cast<py::list>()) {
              const std::string b = layer.cast<std::string>();
              if (b.size() % sizeof(float)) throw mmfree::Error("State: bad pickle (layer of " + std::to_string(b.size()) + " bytes)");
              std::vector<float> h(b.size() / sizeof(float));
              std::memcpy(h.data(), b.data(), b.size());
              st->s.h.push_back(std::move(h));
            }
            return st;
          }));

  py::class_<PyModel, std::shared_ptr<PyModel>>(mod, "Model")
      .def(py::init(&PyModel::load), py::arg("path"), py::arg("threads") = py::none(), py::arg("kernels") = py::none(),
           py::arg("format") = py::none(), py::arg("share_threads_with") = py::none(), py::arg("interleaved") = py::none(),
           py::arg("wide") = py::none(),
           "loads a GGUF file or a Hugging Face directory (kernels chosen by measuring on this CPU unless forced; "
           "interleaved: a second copy of the weights for passes of several tokens, None = where it measures faster; "
           "wide: TQ1 only, one more copy in 2-bit digits for compute-bound passes, None = the same)")
      .def_readonly("path", &PyModel::path)
      .def_property_readonly("config", [](const PyModel& p) {
        const auto& c = p.m.config();
        py::dict d;
        d["vocab_size"] = c.vocab_size, d["hidden_size"] = c.hidden_size, d["num_hidden_layers"] = c.num_hidden_layers;
        d["intermediate_size"] = c.intermediate_size, d["expand_ratio"] = c.expand_ratio, d["hidden_ratio"] = c.hidden_ratio;
        d["use_lower_bound"] = c.use_lower_bound, d["rms_norm_eps"] = c.rms_norm_eps, d["bos_token_id"] = c.bos_token_id;
        d["eos_token_id"] = c.eos_token_id, d["tie_word_embeddings"] = c.tie_word_embeddings;
        d["format"] = mmfree::format_name(p.m.format());
        d["threads"] = p.m.options().threads;
        return d;
      })
      .def_property_readonly("kernel_choice", [](const PyModel& p) {
        const auto& k = p.m.kernel_choice();
        py::dict d;
        d["decode"] = std::string(k.decode.chosen.name), d["batch"] = std::string(k.batch.chosen.name);
        d["prefill"] = std::string(k.prefill.chosen.name);
        d["interleaved_bytes"] = p.m.interleaved_bytes();
        d["wide_bytes"] = p.m.wide_bytes();
        return d;
      })
      .def("n_vocab", [](const PyModel& p) { return p.m.vocab_size(); })
      .def("tokenize", [](const PyModel& p, const py::object& text, bool add_bos) {
             const std::string t = py::isinstance<py::bytes>(text) ? text.cast<std::string>() : py::str(text).cast<std::string>();
             return p.tok.encode(t, add_bos);
           }, py::arg("text"), py::arg("add_bos") = true)
      .def("detokenize", [](const PyModel& p, const py::object& ids) {
             std::vector<int32_t> v = ids_of(ids);
             for (int32_t id : v)
               if (id < 0 || id >= p.tok.vocab_size()) throw mmfree::Error("token id " + std::to_string(id) + ": out of range [0, " + std::to_string(p.tok.vocab_size()) + ")");
             return py::bytes(p.tok.decode(v));
           }, py::arg("ids"), "the text of the tokens, as bytes (as llama-cpp-python)")
      .def("new_state", [](std::shared_ptr<PyModel> p) {
        auto st = std::make_shared<PyState>();
        st->s = p->m.new_state();
        st->model = p;
        return st;
      })
      .def("load_state", [](std::shared_ptr<PyModel> p, const std::string& path) {
        auto st = std::make_shared<PyState>();
        { py::gil_scoped_release unlocked; st->s = mmfree::load_state(p->m, path); }
        st->model = p;
        return st;
      }, py::arg("path"))
      .def("state_from_bytes", [](std::shared_ptr<PyModel> p, const py::bytes& b) {
        auto st = std::make_shared<PyState>();
        std::istringstream in(b.cast<std::string>());
        st->s = mmfree::read_state(p->m, in, "state bytes");
        st->model = p;
        return st;
      }, py::arg("data"))
      .def("prefill", [](const PyModel& p, const py::object& ids, std::shared_ptr<PyState> state, bool last_only) {
             const std::vector<int32_t> v = ids_of(ids);
             if (v.empty()) throw mmfree::Error("prefill: no tokens given");
             p.m.check_ids(v);
             mmfree::State local = p.m.new_state();
             mmfree::State& s = state ? p.state_of(*state) : local;
             std::vector<float> out;
             {
               py::gil_scoped_release unlocked;
               out = last_only ? p.m.prefill_last(v, s) : p.m.prefill(v, s);
             }
             const py::ssize_t V = p.m.vocab_size();
             return last_only ? to_numpy(std::move(out), {V}) : to_numpy(std::move(out), {py::ssize_t(v.size()), V});
           }, py::arg("ids"), py::arg("state") = nullptr, py::arg("last_only") = false,
           "logits of every token [T, V] (or of the last, [V]), continuing from state (advanced) or a fresh one")
      .def("step", [](const PyModel& p, int32_t id, PyState& state) {
             const int32_t one[1] = {id};
             p.m.check_ids(one);
             mmfree::State& s = p.state_of(state);
             std::vector<float> out;
             {
               py::gil_scoped_release unlocked;
               out = p.m.step(id, s);
             }
             return to_numpy(std::move(out), {py::ssize_t(p.m.vocab_size())});
           }, py::arg("id"), py::arg("state"), "one decoding step: the state reads id; its logits [V]")
      .def("step_batch", [](const PyModel& p, const py::object& ids, const std::vector<std::shared_ptr<PyState>>& states) {
             const std::vector<int32_t> v = ids_of(ids);
             if (v.size() != states.size()) throw mmfree::Error("step_batch: " + std::to_string(v.size()) + " ids for " + std::to_string(states.size()) + " states");
             p.m.check_ids(v);
             std::vector<mmfree::State*> ptrs;
             for (auto& s : states) {
               if (!s) throw mmfree::Error("step_batch: a state is None");
               ptrs.push_back(&p.state_of(*s));
             }
             for (size_t i = 0; i < ptrs.size(); ++i)
               for (size_t j = 0; j < i; ++j)
                 if (ptrs[i] == ptrs[j]) throw mmfree::Error("step_batch: the same state twice (one token per sequence)");
             std::vector<float> out;
             {
               py::gil_scoped_release unlocked;
               out = p.m.step_batch(v, ptrs);
             }
             return to_numpy(std::move(out), {py::ssize_t(v.size()), py::ssize_t(p.m.vocab_size())});
           }, py::arg("ids"), py::arg("states"), "one step of many sequences in one pass: [B, V]")
      .def("prefill_states", [](std::shared_ptr<PyModel> p, const py::object& ids, PyState& state) {
             const std::vector<int32_t> v = ids_of(ids);
             if (v.empty()) throw mmfree::Error("prefill_states: no tokens given");
             p->m.check_ids(v);
             mmfree::State& s = p->state_of(state);
             std::vector<mmfree::State> after;
             std::vector<float> out;
             {
               py::gil_scoped_release unlocked;
               out = p->m.prefill_states(v, s, after);
             }
             py::list states;
             for (mmfree::State& a : after) {
               auto st = std::make_shared<PyState>();
               st->s = std::move(a);
               st->model = p;
               states.append(st);
             }
             return py::make_tuple(to_numpy(std::move(out), {py::ssize_t(v.size()), py::ssize_t(p->m.vocab_size())}), states);
           }, py::arg("ids"), py::arg("state"),
           "the verification pass of speculative decoding: (logits [T, V], the state after each token), in one pass "
           "over the weights; state ends after all of them, and rolling back is using one of the returned states");

  py::class_<Generation>(mod, "Generation")
      .def(py::init([](std::shared_ptr<PyModel> model, const py::object& prompt, int64_t max_tokens, float temperature,
                       int32_t top_k, float top_p, float min_p, float repeat_penalty, int32_t repeat_last_n, uint64_t seed,
                       float presence_penalty, float frequency_penalty, const std::map<int32_t, float>& logit_bias,
                       std::vector<std::string> stop, bool stop_at_eos, std::optional<std::string> grammar,
                       std::optional<std::string> json_schema, std::shared_ptr<PyModel> draft, int lookup, int draft_tokens,
                       std::shared_ptr<PyState> state, int logprobs) {
             mmfree::GenerateOptions g;
             g.max_new_tokens = max_tokens;
             auto& s = g.sampling;
             s.temperature = temperature, s.top_k = top_k, s.top_p = top_p, s.min_p = min_p;
             s.repeat_penalty = repeat_penalty, s.repeat_last_n = repeat_last_n, s.seed = seed;
             s.presence_penalty = presence_penalty, s.frequency_penalty = frequency_penalty;
             for (const auto& [id, b] : logit_bias) {
               if (id < 0 || id >= model->m.vocab_size()) throw mmfree::Error("logit_bias: token id " + std::to_string(id) + " out of range");
               s.logit_bias.emplace_back(id, b);
             }
             s.validate();
             if (max_tokens < 0) throw mmfree::Error("max_tokens: must be >= 0");
             g.eos_id = stop_at_eos ? int32_t(model->m.config().eos_token_id) : -1;
             if (grammar && json_schema) throw mmfree::Error("grammar: give grammar or json_schema, not both");
             if (grammar || json_schema) {
               auto gr = std::make_shared<const mmfree::Grammar>(mmfree::Grammar::parse(
                   grammar ? *grammar : mmfree::JsonSchemaGrammar::convert_text(*json_schema, "json_schema"), grammar ? "grammar" : "json_schema"));
               auto trie = std::make_shared<const mmfree::TokenTrie>(model->tok);
               g.constraint = [gr, trie] { return std::make_unique<mmfree::GrammarFilter>(gr, trie); };
             }
             if (draft && lookup > 0) throw mmfree::Error("draft_model: give draft_model or lookup, not both");
             g.draft_tokens = draft_tokens;
             if (lookup > 0) g.drafter = [lookup] { return std::make_unique<mmfree::LookupDrafter>(lookup); };
             if (draft) {
               mmfree::check_draft_model(model->m, draft->m, draft->path);
               g.drafter = [d = draft, s] { return std::make_unique<mmfree::DraftModelDrafter<mmfree::CpuAccumulate>>(d->m, s); };
             }
             std::vector<int32_t> p = ids_of(prompt);
             if (p.empty()) throw mmfree::Error("prompt: is empty (no tokens to start from)");
             if (state) model->state_of(*state);
             if (logprobs > 20) throw mmfree::Error("logprobs: at most 20");
             return std::make_unique<Generation>(model, std::move(p), std::move(g), std::move(stop), state, draft, logprobs);
           }),
           py::arg("model"), py::arg("prompt"), py::arg("max_tokens"), py::arg("temperature"), py::arg("top_k"),
           py::arg("top_p"), py::arg("min_p"), py::arg("repeat_penalty"), py::arg("repeat_last_n"), py::arg("seed"),
           py::arg("presence_penalty"), py::arg("frequency_penalty"), py::arg("logit_bias"), py::arg("stop"),
           py::arg("stop_at_eos"), py::arg("grammar"), py::arg("json_schema"), py::arg("draft_model"), py::arg("lookup"),
           py::arg("draft_tokens"), py::arg("state"), py::arg("logprobs") = -1)
      .def("next", [](Generation& g) -> py::object {
        auto it = g.next();
        if (!it) return py::none();
        return to_python(*it);
      })
      .def("all", [](Generation& g) {
        py::list out;
        for (auto& it : g.all()) out.append(to_python(it));
        return out;
      }, "every token, once the generation has ended")
      .def("cancel", &Generation::cancel)
      .def("stats", &Generation::stats);
}
