// chat_render.cpp - ORACLE-ONLY tool (never built by CMake, never run by a test): renders a
// conversation with llama.cpp's llama_chat_apply_template() to make the reference renderings
// in tests/data/chat/expected/. See tests/data/chat/README.md for the build and the commands.
//
// usage: chat_render TEMPLATE CONVERSATION ADD_ASS > OUT
//   TEMPLATE      a file holding a template text, or "name:NAME" for a built-in name
//   CONVERSATION  one message a line: ROLE<TAB>CONTENT, CONTENT with \n \t \r \\ escapes
//   ADD_ASS       1 to end with the assistant's generation prompt, 0 not to
// Exits 2 when llama.cpp refuses the template.
#include "llama.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static std::string unescape(const std::string &s)
{
    std::string o;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            o += s[i];
            continue;
        }
        char c = s[++i];
        o += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    }
    return o;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: chat_render TEMPLATE CONVERSATION ADD_ASS\n");
        return 1;
    }
    std::string tmpl;
    if (strncmp(argv[1], "name:", 5) == 0) {
        tmpl = argv[1] + 5;
    } else {
        std::ifstream f(argv[1], std::ios::binary);
        std::stringstream ss;
        ss << f.rdbuf();
        tmpl = ss.str();
    }
    std::vector<std::string> roles, contents;
    std::ifstream conv(argv[2], std::ios::binary);
    for (std::string line; std::getline(conv, line);) {
        size_t tab = line.find('\t');
        if (tab == std::string::npos)
            continue;
        roles.push_back(line.substr(0, tab));
        contents.push_back(unescape(line.substr(tab + 1)));
    }
    std::vector<llama_chat_message> msgs;
    for (size_t i = 0; i < roles.size(); i++)
        msgs.push_back({roles[i].c_str(), contents[i].c_str()});
    bool add_ass = atoi(argv[3]) != 0;
    std::vector<char> buf(1 << 16);
    int n = llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, buf.data(),
                                      (int)buf.size());
    if (n < 0) {
        fprintf(stderr, "llama_chat_apply_template refused the template (%d)\n", n);
        return 2;
    }
    if (n > (int)buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl.c_str(), msgs.data(), msgs.size(), add_ass, buf.data(),
                                      (int)buf.size());
    }
    fwrite(buf.data(), 1, n, stdout);
    return 0;
}
