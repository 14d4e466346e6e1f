// vocab_tokenize.cpp - ORACLE ONLY: not built by CMake, never run by a test. Tokenizes the cases of
// a llama.cpp-style .inp file (separated by "\n__ggml_vocab_test__\n") with llama.cpp's libllama
// and prints one line of token ids per case, each id after a space (the .out format of
// llama.cpp's models/ggml-vocab-*.out): vocab only, add_special false,
// parse_special false. Used to make tests/data/vocab/*.out (see tests/data/vocab/README.md).
//
//   O=/work/shared/oracle/llama.cpp
//   g++ -O2 -std=c++17 -I$O/include tests/golden/tools/vocab_tokenize.cpp $O/bin/libllama.so.0 \
//       $O/bin/libggml.so.0 $O/bin/libggml-base.so.0 -Wl,-rpath,$O/bin -o /tmp/vocab_tokenize
//   /tmp/vocab_tokenize VOCAB.gguf < CASES.inp > CASES.out
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "llama.h"

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s VOCAB.gguf < CASES.inp > CASES.out\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "%s: cannot load\n", argv[1]);
        return 1;
    }
    const llama_vocab *vocab = llama_model_get_vocab(model);

    std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    const std::string sep = "\n__ggml_vocab_test__\n";
    size_t pos = 0;
    for (size_t e; (e = all.find(sep, pos)) != std::string::npos; pos = e + sep.size()) {
        const std::string text = all.substr(pos, e - pos);
        std::vector<llama_token> ids(text.size() + 16);
        int n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), ids.data(),
                               (int32_t)ids.size(), false, false);
        if (n < 0) {
            ids.resize(-n);
            n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), ids.data(),
                               (int32_t)ids.size(), false, false);
        }
        for (int i = 0; i < n; i++)
            printf(" %d", ids[i]);
        printf("\n");
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
