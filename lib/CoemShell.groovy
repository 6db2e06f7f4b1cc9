/*
 * Shell quoting for module scripts: staged file names keep the user's names, which may hold
 * spaces, non-ASCII letters, commas or quotes (issue 15). Nextflow puts lib/ on the classpath.
 */
class CoemShell {
    /** One shell word: the value in single quotes, an embedded ' written as '"'"'. */
    static String quote(Object value) {
        return "'" + value.toString().replace("'", "'\"'\"'") + "'"
    }
}
